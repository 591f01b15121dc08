//! `state show` / `state verify`: read-only views of the key registry, safe next to a running
//! service; `state acknowledge-trim`: the trim record, written only after a clean etcd scan.
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Subcommand;

use super::scan::{self, Tally, EXIT_RETIRED};
use super::verify::{EtcdArgs, EXIT_COULD_NOT_CHECK, EXIT_VERIFIED};
use super::{load, parse_duration, ConfigArg};
use crate::keys::trim::{self, ScanSummary, TrimRecord};
use crate::keys::{Registry, Store};

const ACKNOWLEDGE_EXIT_CODES_HELP: &str = "\
Exit codes (nothing is written unless 0):
  0   recorded: every scan clean, every value and the active version on Transit vN or later
  1   could not check: no readable key registry (versions unknown), no active version yet,
      etcd unreachable, a page failed, the snapshot was compacted away
  2   usage error (also --min-decryption-version below 2)
  3, 4, 5, 7  as scan-etcd: a value in plaintext, of another provider, on an unknown key_id,
      malformed
  8   a value on a Transit version below N (or retired), or the active version is below N
  64  configuration error";

#[derive(Subcommand, Debug)]
pub(crate) enum StateCommand {
    /// Print the key registry as a table: version, created, key_id, state; and the trim record.
    Show(ConfigArg),
    /// Check the registry's content hash, generation and scope; exit 0 only when intact.
    Verify(ConfigArg),
    /// Record that Transit versions below N are trimmed deliberately, after checking etcd.
    ///
    /// Run on every control-plane host (each has its own state_dir) after every value was
    /// rewritten onto version N or later, and before raising min_decryption_version to N in
    /// OpenBao. It scans etcd itself (the scan of `scan-etcd`, for each --prefix) and writes
    /// nothing unless every scan is clean, every value is on Transit version N or later and
    /// the active version is too. It then writes <state_dir>/trim-<scope>.json, which the
    /// provider and `doctor` read: a min_decryption_version up to N is no longer a warning (a
    /// higher one still is). etcd backups from before the rewrite hold values on the lower
    /// versions; to restore one, lower min_decryption_version again first:
    /// `bao write transit/keys/<key>/config min_decryption_version=<old>`.
    #[command(after_help = ACKNOWLEDGE_EXIT_CODES_HELP)]
    AcknowledgeTrim(AcknowledgeTrimArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("etcd").required(true).args(["etcd_endpoint"])))]
pub(crate) struct AcknowledgeTrimArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The min_decryption_version about to be set: versions below it will no longer decrypt.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    min_decryption_version: u32,
    /// etcd key prefix to scan (repeatable): every resource the EncryptionConfiguration
    /// encrypts.
    #[arg(
        long = "prefix",
        value_name = "PREFIX",
        default_value = "/registry/secrets/"
    )]
    prefixes: Vec<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Per-request deadline for etcd.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
}

pub(crate) fn run(cmd: StateCommand) -> Result<ExitCode> {
    let (arg, show) = match &cmd {
        StateCommand::Show(a) => (a, true),
        StateCommand::Verify(a) => (a, false),
        StateCommand::AcknowledgeTrim(a) => return acknowledge_trim(a),
    };
    let settings = load(arg)?;
    let identity = crate::provider::key_identity(&settings);
    let store = Store::open_readonly(&settings.server.state_dir, &identity.fingerprint());
    let verified = store.verify()?;
    if show {
        print_registry(&verified.registry);
        match trim::load(&settings.server.state_dir, &identity.fingerprint()) {
            Ok(Some(t)) => println!(
                "trimmed below v{} (recorded {}; {})",
                t.min_decryption_version,
                t.recorded(),
                scanned(&t.scans)
            ),
            Ok(None) => {}
            Err(e) => eprintln!("bao-kms-provider: {e}"),
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

fn print_registry(registry: &Registry) {
    println!("{:<8} {:<21} {:<9} KEY_ID", "VERSION", "CREATED", "STATE");
    for r in registry.records.values() {
        let created =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.created_unix.max(0) as u64);
        println!(
            "{:<8} {:<21} {:<9} {}",
            format!("v{}", r.version),
            humantime::format_rfc3339_seconds(created).to_string(),
            r.state.as_str(),
            r.key_id
        );
    }
    if registry.is_empty() {
        println!("(empty: the provider has not yet seen the Transit key)");
    }
}

fn scanned(scans: &[ScanSummary]) -> String {
    let each: Vec<String> = scans
        .iter()
        .map(|s| {
            format!(
                "{} {} values at revision {}",
                s.prefix, s.values, s.revision
            )
        })
        .collect();
    format!("scanned {}", each.join(", "))
}

fn acknowledge_trim(a: &AcknowledgeTrimArgs) -> Result<ExitCode> {
    let settings = load(&a.config)?;
    let n = a.min_decryption_version;
    let scope = crate::provider::key_identity(&settings).fingerprint();
    let dir = &settings.server.state_dir;
    let registry = match Store::open_readonly(dir, &scope).verify() {
        Ok(v) => v.registry,
        Err(e) => {
            return refuse(
                EXIT_COULD_NOT_CHECK,
                format!("cannot tell which Transit version each key_id is on: {e}"),
            )
        }
    };
    if let Some((code, why)) = active_refusal(&registry, n) {
        return refuse(code, why);
    }
    let name = &settings.transit.key_id_scope.provider_name;
    let (etcd, _) = a.etcd.client(a.timeout)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut scans = Vec::new();
    for prefix in &a.prefixes {
        let t = rt.block_on(scan::tally(&etcd, prefix, name, Ok(&registry)));
        if let Some((code, why)) = scan_refusal(&t, n) {
            eprint!("{}", scan::text(&t));
            return refuse(code, why);
        }
        scans.push(ScanSummary {
            prefix: t.prefix,
            revision: t.revision,
            values: t.values,
        });
    }
    let record = TrimRecord {
        min_decryption_version: n,
        recorded_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        scope,
        scans,
    };
    let path = trim::save(dir, &record)?;
    println!(
        "{}: versions below v{n} trimmed deliberately; {}",
        path.display(),
        scanned(&record.scans)
    );
    Ok(ExitCode::SUCCESS)
}

fn refuse(code: u8, why: String) -> Result<ExitCode> {
    eprintln!("bao-kms-provider: nothing recorded: {why}");
    Ok(ExitCode::from(code))
}

/// The provider must not write with a version that is about to stop decrypting.
fn active_refusal(registry: &Registry, n: u32) -> Option<(u8, String)> {
    match registry.active() {
        None => Some((
            EXIT_COULD_NOT_CHECK,
            "the key registry has no active version yet (start the provider first)".into(),
        )),
        Some(a) if a.version < n => Some((
            EXIT_RETIRED,
            format!(
                "the active key version is v{}: below v{n} what the provider writes would not decrypt; rotate the key and let the provider promote v{n} or later first",
                a.version
            ),
        )),
        Some(_) => None,
    }
}

/// Why one scan does not allow trimming below `n`: its own verdict, or values on a retired
/// key_id or a version below `n` (active and pending ones too), each named with its count.
fn scan_refusal(t: &Tally, n: u32) -> Option<(u8, String)> {
    if t.exit_code != EXIT_VERIFIED && t.exit_code != EXIT_RETIRED {
        return Some((
            t.exit_code,
            format!(
                "the scan of {} found {} (exit {})",
                t.prefix, t.result, t.exit_code
            ),
        ));
    }
    let low: Vec<String> = t
        .key_ids
        .iter()
        .filter(|k| k.state == "retired" || k.transit_version.is_none_or(|v| v < n))
        .map(|k| {
            let version = k.transit_version.map_or("?".into(), |v| format!("v{v}"));
            format!(
                "{} values on key_id {} (Transit {version}, {})",
                k.values, k.key_id, k.state
            )
        })
        .collect();
    if low.is_empty() && t.exit_code == EXIT_VERIFIED {
        return None;
    }
    Some((
        EXIT_RETIRED,
        format!(
            "under {}: {}; rewrite them before trimming below v{n}",
            t.prefix,
            low.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::scan::KeyIdCount;

    fn tally(versions: &[(u32, &'static str)]) -> Tally {
        let mut t = Tally::default();
        t.prefix = "/registry/secrets/".into();
        t.key_ids = versions
            .iter()
            .map(|(v, state)| KeyIdCount {
                key_id: format!("k{v}"),
                state,
                transit_version: Some(*v),
                values: 2,
            })
            .collect();
        t
    }

    #[test]
    fn a_value_below_n_refuses_even_when_active_or_pending() {
        assert_eq!(
            scan_refusal(&tally(&[(2, "active"), (3, "pending")]), 2),
            None
        );
        let (code, why) =
            scan_refusal(&tally(&[(1, "active"), (2, "pending")]), 2).expect("refused");
        assert_eq!(code, EXIT_RETIRED);
        assert!(
            why.contains("2 values on key_id k1 (Transit v1, active)"),
            "{why}"
        );
        let (code, _) = scan_refusal(&tally(&[(2, "pending")]), 3).expect("refused");
        assert_eq!(code, EXIT_RETIRED);
        let mut retired = tally(&[(2, "retired"), (3, "active")]);
        retired.exit_code = EXIT_RETIRED;
        let (code, why) = scan_refusal(&retired, 2).expect("refused");
        assert_eq!(code, EXIT_RETIRED);
        assert!(why.contains("on key_id k2 (Transit v2, retired)"), "{why}");
    }

    #[test]
    fn a_scan_that_is_not_clean_refuses_with_its_exit_code() {
        let mut t = tally(&[(3, "active")]);
        t.exit_code = 5;
        t.result = "UNKNOWN KEY";
        assert_eq!(scan_refusal(&t, 2).map(|r| r.0), Some(5));
    }

    #[test]
    fn an_active_version_below_n_refuses_and_no_active_one_cannot_tell() {
        let registry = |state: &str| -> Registry {
            serde_json::from_value(serde_json::json!({ "records": { "2": {
                "version": 2, "created_unix": 1, "key_id": "k2", "state": state,
                "first_seen_unix": 0, "observations": 0,
            }}}))
            .expect("registry")
        };
        assert_eq!(active_refusal(&registry("active"), 2), None);
        assert_eq!(
            active_refusal(&registry("active"), 3).map(|r| r.0),
            Some(EXIT_RETIRED)
        );
        assert_eq!(
            active_refusal(&registry("pending"), 2).map(|r| r.0),
            Some(EXIT_COULD_NOT_CHECK)
        );
    }
}
