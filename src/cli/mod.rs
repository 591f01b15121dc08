//! Command line: the subcommands operators and automation use. `main.rs` only calls `run`.
mod doctor;
mod exit;
mod probe;
mod render;
mod scan;
mod stage;
mod state;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError, Environment, DEFAULT_CONFIG_PATH};
pub use exit::Exit;

#[derive(Parser, Debug)]
#[command(
    name = "bao-kms-provider",
    version,
    about = "Kubernetes KMS v2 provider backed by OpenBao Transit",
    long_about = "Kubernetes KMS v2 provider backed by OpenBao Transit.\n\n\
kube-apiserver calls this provider over a unix socket (gRPC KMS v2) to encrypt and decrypt the \
seeds that protect Secrets in etcd; every key operation happens in OpenBao Transit. Normally run \
by systemd (bao-kms-provider.socket / .service); the other subcommands check and operate it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', env = "BAO_KMS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct CheckConfigArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The configuration the service runs (normally the installed file), to compare with.
    #[arg(long, value_name = "FILE")]
    pub(crate) running: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DoctorArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Another cluster's configuration file (repeatable): warn when this token can decrypt
    /// with the Transit key it names, or when it names this cluster's key. Only its
    /// [openbao] instance_id and namespace and its [transit] mount and key are read.
    #[arg(long = "other-config", value_name = "FILE")]
    pub(crate) other_config: Vec<PathBuf>,
    /// Also check this host's kube-apiserver: /readyz/kms-providers, that it polls this
    /// provider (its envelope metrics name the provider), and that its latest Status has the
    /// key_id the provider serves now (kube-apiserver's sha256: label).
    #[arg(long)]
    pub(crate) kube: bool,
    /// Kubeconfig for --kube (client certificate or token, the cluster CA).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/kubernetes/admin.conf",
        requires = "kube"
    )]
    pub(crate) kubeconfig: PathBuf,
    /// kube-apiserver URL for --kube instead of the kubeconfig's server (which may be a load
    /// balancer), e.g. https://10.0.0.11:6443 for this host's own.
    #[arg(long, value_name = "URL", requires = "kube")]
    pub(crate) kube_server: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Serve the KMS v2 API on the unix socket (socket from systemd, or bound from the config).
    ///
    /// Accepts on the socket once the first OpenBao probe has finished (until then clients
    /// wait in the socket's backlog; if OpenBao is down, Status then says why), tells systemd
    /// READY=1 after login, key metadata and an encrypt/decrypt probe succeeded, and drains
    /// in-flight calls on SIGTERM. SIGHUP re-reads credentials and TLS files.
    Serve(ConfigArg),
    /// Validate a config file and print the effective configuration (secrets are never printed).
    ///
    /// Exit 0 when valid, 64 with a message naming the field when not. Also 64 when the config
    /// file or state directory is group- or world-writable, or the JWT, token or client key file
    /// is readable by every user (`serve` only warns about these). With --running FILE (the
    /// configuration the service runs), also names the settings that differ: those a reload
    /// (`systemctl reload`) applies, those that need a restart, and those that make a reload
    /// fail as a whole (another PKCS#11 module or token). Does not contact OpenBao.
    CheckConfig(CheckConfigArgs),
    /// Act like kube-apiserver against a running provider: Status, Encrypt of 32 random bytes,
    /// Decrypt, compare.
    ///
    /// Prints version, healthz, key_id and latencies; exits 0 only if healthz is ok, the API
    /// version is v2, Encrypt returns Status's key_id and Decrypt returns the same bytes.
    Probe(probe::ProbeArgs),
    /// Print the least-privilege OpenBao policy (HCL) for this configuration.
    ///
    /// The policy allows reading the key and its mount, encrypt, decrypt and token self-upkeep;
    /// it never allows creating, rotating, exporting, backing up or deleting keys.
    Policy(ConfigArg),
    /// Print the kube-apiserver EncryptionConfiguration for this provider, as JSON (valid YAML).
    ///
    /// One rollout stage at a time (--stage, each explained below), merged per resource entry with
    /// the providers kube-apiserver has today (--existing-config FILE). Roll out in two passes: the
    /// read stage on every API server, each restarted or reloaded with it, before the write stage
    /// on any; otherwise one server writes values the others cannot read yet.
    ///
    /// Install the output where --encryption-provider-config points; print it to a new file and
    /// move it there (a shell redirection onto FILE itself empties FILE before it is read). A FILE
    /// that cannot be used is refused with exit 64, naming the file and the field, never a key.
    EncryptionConfig(render::EncryptionConfigArgs),
    /// Check this host's config against the real OpenBao before rollout: one line per check.
    ///
    /// Checks in order: config, tls (CA file and handshake with tls_server_name), openbao-health
    /// (sys/health), login (the configured auth method), token (TTL, renewable, policies),
    /// key-profile (aes256-gcm96, not exportable, no plaintext backup, deletion not allowed, not
    /// derived or convergent), upsert (config/keys disable_upsert=true), mount (sys/mounts
    /// identity), round-trip (encrypt+decrypt of random bytes), least-privilege (the token must
    /// not rotate, export, back up, restore, trim, import, delete or reconfigure the key, change
    /// the mount or its own policy; each offending path is named), capabilities (read on the
    /// key, update on encrypt/decrypt) and isolation (warns when the token can decrypt with key
    /// names a glob would grant, or with the key an --other-config file names, or when that
    /// file names this key); with --kube also kube-readyz, kube-provider and kube-key-id (this
    /// host's kube-apiserver). Lines start with ok, warn, FAIL or skip. Exit 0 when nothing failed, 1 on any FAIL, 64 when the config itself is invalid. Changes nothing in
    /// OpenBao beyond one login and one encrypt/decrypt. See docs/operations.md for each failure.
    Doctor(DoctorArgs),
    /// Inspect the key registry under state_dir (every Transit version and its key_id).
    #[command(subcommand)]
    State(state::StateCommand),
    /// Restore drill: check that a raw etcd value is a KMS v2 envelope of this provider and decrypts.
    ///
    /// Reads the value from etcd (--etcd-endpoint, gRPC gateway with the etcd client
    /// certificate) or from --input, checks the k8s:enc:kms:v2:<provider>: prefix, decodes and
    /// validates the EncryptedObject as kube-apiserver does, asks the provider over its socket to
    /// decrypt the DEK source, and decrypts the data with the etcd key as additional data.
    /// Prints provider, key_id (active, retired, pending or unknown), DEK source type and
    /// `decrypts: yes/no`; the plaintext only with --show-plaintext.
    #[command(after_help = verify::EXIT_CODES_HELP)]
    VerifyEtcdValue(verify::VerifyArgs),
    /// Count every value under an etcd prefix by key_id and by what else encrypts it.
    ///
    /// Reads one etcd snapshot (gRPC gateway with the etcd client certificate) page by page and
    /// sorts each value: this provider's KMS v2 envelope, per key_id with its state in this
    /// host's key registry (active, pending, retired, unknown); another provider or scheme, by
    /// its public prefix; unencrypted; or malformed. Decrypts nothing and prints no value: the
    /// check after a migration or a key rotation that no value is left on a retired key
    /// version. Text or --output json (counts, the first key of each kind, result, exit_code).
    #[command(after_help = scan::EXIT_CODES_HELP)]
    ScanEtcd(scan::ScanArgs),
}

/// Parses arguments and runs the chosen subcommand; returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Probe(_)) {
        // Tools piped into `head` should end quietly, not panic on EPIPE. The daemon keeps
        // Rust's default (SIGPIPE ignored) so a closed log stream can never kill it; so does
        // `probe`, which writes to the KMS socket: a provider closing it (a restart) must be a
        // reported failure, not a silent death by SIGPIPE.
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: restores the default disposition (no handler runs) before any thread starts.
        // A failure leaves Rust's default (ignored), which only means an EPIPE error message.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
    let result = match cli.command {
        Command::Serve(a) => serve(&a),
        Command::CheckConfig(a) => check_config(&a),
        Command::Probe(a) => probe::run(a),
        Command::Policy(a) => load(&a).map(|s| {
            print!("{}", render::policy(&s));
            ExitCode::SUCCESS
        }),
        Command::EncryptionConfig(a) => render::encryption_config(&a),
        Command::State(c) => state::run(c),
        Command::Doctor(a) => doctor::run(&a),
        Command::VerifyEtcdValue(a) => verify::run(a),
        Command::ScanEtcd(a) => scan::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bao-kms-provider: {e:#}");
            Exit::of(&e).into()
        }
    }
}

pub(crate) fn load(arg: &ConfigArg) -> Result<config::Settings> {
    Ok(config::load(&arg.config, &Environment::from_process())?)
}

fn serve(arg: &ConfigArg) -> Result<ExitCode> {
    let settings = load(arg)?;
    crate::telemetry::logging::init(settings.log.level, settings.log.format);
    if let Err(e) = crate::hardening::forbid_core_dumps() {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable; a core dump could hold secrets");
    }
    for p in crate::hardening::check_permissions(&settings, &arg.config) {
        if !p.refuses_serve() {
            tracing::warn!(problem = %p, "UNSAFE PERMISSIONS: `check-config` refuses this; fix it before the next rollout");
        }
    }
    // A CA, client certificate or key, or PKCS#11 module others could change is not used.
    crate::hardening::refuse_untrusted(&settings)?;
    // Newer rules only warn here: an upgrade must not stop a host whose config the previous
    // release accepted (check-config refuses them, so new rollouts fix them).
    for w in config::upgrade_checks(&settings) {
        tracing::warn!(
            field = w.field().unwrap_or(""),
            "{w}; `check-config` refuses this, serving anyway"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(crate::daemon::run(settings, arg.config.clone()))?;
    Ok(ExitCode::SUCCESS)
}

fn check_config(args: &CheckConfigArgs) -> Result<ExitCode> {
    let arg = &args.config;
    let text = std::fs::read_to_string(&arg.config).map_err(|source| ConfigError::Read {
        path: arg.config.clone(),
        source,
    })?;
    let raw = config::parse(&text, &arg.config)?;
    let settings = config::validate(&raw, &Environment::from_process())?;
    if let Some(e) = config::upgrade_checks(&settings).into_iter().next() {
        // A running `serve` only warns about these; a config being rolled out must pass them.
        return Err(e.into());
    }
    // The same check `serve` runs; here every problem is an error, there only untrusted files
    // are (docs/security.md).
    // Before "valid" is printed: a config refused for its files' modes is not valid here.
    let problems = crate::hardening::check_permissions(&settings, &arg.config);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("bao-kms-provider: {p}");
        }
        return Ok(Exit::Config.into());
    }
    println!("# {}: valid", arg.config.display());
    println!(
        "# auth method: {}; socket: {}",
        settings.auth.method_name(),
        settings.server.socket_path.display()
    );
    if let config::AuthSettings::Cert {
        cert_file,
        key: config::ClientKey::Pkcs11(p11),
        ..
    } = &settings.auth
    {
        for line in pkcs11_file_warnings(cert_file, p11) {
            println!("# warning: {line}");
        }
    }
    if let Some(running) = &args.running {
        let running_settings = config::load(running, &Environment::from_process())?;
        for line in reload_lines(&config::ReloadDiff::between(&running_settings, &settings)) {
            println!("# {line}");
        }
    }
    print!("{}", config::render_effective(&raw));
    Ok(ExitCode::SUCCESS)
}

/// What `check-config --running` says a reload would do with the settings that differ.
fn reload_lines(diff: &config::ReloadDiff) -> Vec<String> {
    let apply = diff.fields(config::OnReload::Apply);
    let restart = diff.fields(config::OnReload::Restart);
    let refuse = diff.fields(config::OnReload::Refuse);
    if apply.is_empty() && restart.is_empty() && refuse.is_empty() {
        return vec!["no setting differs from the running configuration".to_owned()];
    }
    let mut out = Vec::new();
    if !refuse.is_empty() {
        out.push(format!(
            "reload refused: {} (nothing changes until a restart)",
            refuse.join(", ")
        ));
    } else if !apply.is_empty() {
        out.push(format!("reload applies: {}", apply.join(", ")));
    }
    if !restart.is_empty() {
        out.push(format!(
            "restart needed: {} (a reload keeps the running values)",
            restart.join(", ")
        ));
    }
    out
}

/// What `check-config` can tell about a PKCS#11 setup without opening the token.
fn pkcs11_file_warnings(cert_file: &std::path::Path, p11: &config::Pkcs11Settings) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    if !p11.module_path.is_file() {
        out.push(format!(
            "auth.cert.module_path {} does not exist here",
            p11.module_path.display()
        ));
    }
    if !cert_file.is_file() {
        out.push(format!(
            "auth.cert.cert_file {} does not exist here",
            cert_file.display()
        ));
    }
    match std::fs::metadata(&p11.pin_file) {
        Err(e) => out.push(format!(
            "auth.cert.pin_file {}: {e}",
            p11.pin_file.display()
        )),
        Ok(m) if m.permissions().mode() & 0o044 != 0 => out.push(format!(
            "auth.cert.pin_file {} is readable by group or others: the provider refuses it (chmod 0600)",
            p11.pin_file.display()
        )),
        Ok(_) => {}
    }
    out
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration such as \"3s\": {e}"))
}
