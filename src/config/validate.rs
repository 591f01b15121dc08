//! Pure checks from the raw file to typed settings: no I/O, nothing started.
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ConfigError;
use super::raw::{AuthMethodName, KeySource, RawAddress, RawAddresses, RawCertAuth, RawConfig};
use super::settings::*;

/// Facts from the environment that validation may use (kept out of it so it stays pure).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$CREDENTIALS_DIRECTORY`, set by systemd for `LoadCredential=`.
    pub(crate) credentials_directory: Option<PathBuf>,
}

impl Environment {
    pub(crate) fn from_process() -> Self {
        Self {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

pub fn validate(raw: &RawConfig, env: &Environment) -> Result<Settings> {
    let server = ServerSettings {
        socket_path: absolute_path("server.socket_path", &raw.server.socket_path, env)?,
        socket_mode: socket_mode(&raw.server.socket_mode)?,
        state_dir: absolute_path("server.state_dir", &raw.server.state_dir, env)?,
        drain_timeout: duration(
            "server.drain_timeout",
            &raw.server.drain_timeout,
            ms(100),
            secs(300),
        )?,
        start_timeout: duration(
            "server.start_timeout",
            &raw.server.start_timeout,
            secs(5),
            secs(3600),
        )?,
        kms_timeout: duration(
            "server.kms_timeout",
            &raw.server.kms_timeout,
            ms(500),
            secs(60),
        )?,
        max_concurrent_streams: match raw.server.max_concurrent_streams {
            n @ 1..=65536 => n,
            n => {
                return Err(ConfigError::invalid(
                    "server.max_concurrent_streams",
                    format!("{n} is out of range (1 to 65536)"),
                ))
            }
        },
        idle_timeout: duration(
            "server.idle_timeout",
            &raw.server.idle_timeout,
            secs(1),
            secs(86400),
        )?,
    };
    let openbao = openbao(raw, env)?;
    let auth = auth(raw, env)?;
    let auth_expiry_warning = duration(
        "auth.expiry_warning",
        &raw.auth.expiry_warning,
        Duration::ZERO,
        secs(365 * 86400),
    )?;
    let transit = transit(raw)?;
    let status = status(raw)?;
    let rotation = RotationSettings {
        stable_observations: NonZeroU32::new(raw.rotation.stable_observations).ok_or_else(
            || ConfigError::invalid("rotation.stable_observations", "must be at least 1"),
        )?,
        activation_delay: duration(
            "rotation.activation_delay",
            &raw.rotation.activation_delay,
            Duration::ZERO,
            secs(7 * 86400),
        )?,
    };
    let telemetry = TelemetrySettings {
        metrics_address: listen_address(
            "telemetry.metrics_address",
            &raw.telemetry.metrics_address,
        )?,
        health_address: listen_address("telemetry.health_address", &raw.telemetry.health_address)?,
        max_connections: match raw.telemetry.max_connections {
            n @ 1..=1024 => n as usize,
            n => {
                return Err(ConfigError::invalid(
                    "telemetry.max_connections",
                    format!("{n} is out of range (1 to 1024)"),
                ))
            }
        },
    };
    Ok(Settings {
        server,
        openbao,
        auth,
        auth_expiry_warning,
        transit,
        status,
        rotation,
        log: LogSettings {
            level: raw.log.level,
            format: raw.log.format,
        },
        telemetry,
    })
}

/// Rules added after configs were already deployed. `check-config` refuses a config that breaks
/// one; `serve` only logs them, so a package upgrade that restarts the provider never turns a
/// config the previous release accepted into an outage.
pub fn upgrade_checks(s: &Settings) -> Vec<ConfigError> {
    let mut out = Vec::new();
    if s.openbao.timeout >= s.server.kms_timeout {
        out.push(ConfigError::invalid(
            "openbao.timeout",
            format!(
                "{} must be shorter than server.kms_timeout ({}), or one slow node uses the whole KMS call budget and no other node is tried",
                humantime::format_duration(s.openbao.timeout),
                humantime::format_duration(s.server.kms_timeout)
            ),
        ));
    }
    if s.rotation.activation_delay < s.status.probe_interval * 2 {
        out.push(ConfigError::invalid(
            "rotation.activation_delay",
            format!(
                "{} is shorter than two status.probe_interval ({}): hosts sharing one OpenBao may promote a new key version before the others have read it, and their Decrypts fail with NotFound",
                humantime::format_duration(s.rotation.activation_delay),
                humantime::format_duration(s.status.probe_interval * 2)
            ),
        ));
    }
    out
}

fn openbao(raw: &RawConfig, env: &Environment) -> Result<OpenBaoSettings> {
    let o = &raw.openbao;
    let global_name = optional(&o.tls_server_name).map(str::to_owned);
    if let Some(name) = &global_name {
        server_name("openbao.tls_server_name", name)?;
    }
    let entries: Vec<(&str, Option<&str>)> = match &o.address {
        RawAddresses::One(url) => vec![(url.as_str(), None)],
        RawAddresses::Many(list) => list
            .iter()
            .map(|a| match a {
                RawAddress::Url(url) => (url.as_str(), None),
                RawAddress::Node(n) => (n.url.as_str(), optional(&n.tls_server_name)),
            })
            .collect(),
    };
    if entries.is_empty() || entries.iter().all(|(u, _)| u.trim().is_empty()) {
        return Err(ConfigError::invalid(
            "openbao.address",
            "is required (e.g. \"https://openbao.example.internal:8200\", or a list of the HA nodes)",
        ));
    }
    if entries.len() > 16 {
        return Err(ConfigError::invalid(
            "openbao.address",
            "lists more than 16 nodes",
        ));
    }
    let mut nodes: Vec<OpenBaoNode> = Vec::with_capacity(entries.len());
    for (url, name) in entries {
        let url = node_url(url)?;
        if nodes.iter().any(|n| n.url == url) {
            return Err(ConfigError::invalid(
                "openbao.address",
                format!("{url} is listed twice"),
            ));
        }
        if let Some(name) = name {
            server_name("openbao.address", name)?;
        }
        nodes.push(OpenBaoNode {
            url,
            tls_server_name: name.map(str::to_owned).or_else(|| global_name.clone()),
        });
    }
    let address = nodes[0].url.clone();
    if nodes.iter().any(|n| n.url.scheme() != address.scheme()) {
        return Err(ConfigError::invalid(
            "openbao.address",
            "mixes http:// and https:// nodes; every node of one cluster uses the same scheme",
        ));
    }
    let ca_file = optional(&o.ca_file)
        .map(|p| absolute_path("openbao.ca_file", p, env))
        .transpose()?;
    if address.scheme() == "https" && ca_file.is_none() {
        return Err(ConfigError::invalid(
            "openbao.ca_file",
            "is required with an https:// address (it is the only trust root)",
        ));
    }
    let tls_server_name = global_name;
    let namespace = optional(&o.namespace)
        .map(|n| namespace(n.trim_matches('/')))
        .transpose()?;
    let instance_id = required("openbao.instance_id", &o.instance_id)?;
    let max_connections = o.max_connections as usize;
    if !(1..=4096).contains(&max_connections) {
        return Err(ConfigError::invalid(
            "openbao.max_connections",
            format!("{max_connections} is out of range (1 to 4096)"),
        ));
    }
    if o.retry_budget_percent > 100 {
        return Err(ConfigError::invalid(
            "openbao.retry_budget_percent",
            format!("{} is out of range (0 to 100)", o.retry_budget_percent),
        ));
    }
    if o.retry_budget_min_per_second > 1000 {
        return Err(ConfigError::invalid(
            "openbao.retry_budget_min_per_second",
            format!(
                "{} is out of range (0 to 1000)",
                o.retry_budget_min_per_second
            ),
        ));
    }
    Ok(OpenBaoSettings {
        address,
        nodes,
        max_connections,
        retry_budget: RetryBudgetSettings {
            percent: o.retry_budget_percent,
            min_per_second: o.retry_budget_min_per_second,
        },
        ca_file,
        tls_server_name,
        namespace,
        timeout: duration("openbao.timeout", &o.timeout, ms(100), secs(60))?,
        instance_id,
    })
}

/// The namespace is sent as the `X-Vault-Namespace` header on every request, so it must be a
/// valid header value (no control characters such as a newline).
fn namespace(value: &str) -> Result<String> {
    if http::HeaderValue::from_str(value).is_err() {
        return Err(ConfigError::invalid(
            "openbao.namespace",
            format!(
                "{value:?} is not a valid HTTP header value (control characters are not allowed)"
            ),
        ));
    }
    Ok(value.to_owned())
}

/// One node's URL: http(s), no credentials, query or path; plain http only to loopback.
fn node_url(raw: &str) -> Result<reqwest::Url> {
    let field = "openbao.address";
    let address = reqwest::Url::parse(raw.trim())
        .map_err(|e| ConfigError::invalid(field, format!("{raw:?} is not a URL: {e}")))?;
    if !address.username().is_empty() || address.password().is_some() || address.query().is_some() {
        return Err(ConfigError::invalid(
            field,
            "must not carry credentials or a query",
        ));
    }
    if !matches!(address.path(), "" | "/") {
        return Err(ConfigError::invalid(
            field,
            "must not have a path (the provider adds /v1/...)",
        ));
    }
    let host = address.host_str().unwrap_or_default();
    match address.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(ConfigError::invalid(
                field,
                format!(
                    "http:// is only allowed to a loopback address, not {host:?}; use https://"
                ),
            ))
        }
        other => {
            return Err(ConfigError::invalid(
                field,
                format!("scheme {other:?} is not http or https"),
            ))
        }
    }
    Ok(address)
}

fn server_name(field: &'static str, name: &str) -> Result<()> {
    if rustls::pki_types::ServerName::try_from(name).is_err() {
        return Err(ConfigError::invalid(
            field,
            format!("tls_server_name {name:?} is not a DNS name or IP address"),
        ));
    }
    Ok(())
}

fn auth(raw: &RawConfig, env: &Environment) -> Result<AuthSettings> {
    let a = &raw.auth;
    Ok(match a.method {
        AuthMethodName::Jwt => AuthSettings::Jwt {
            mount_path: mount_path("auth.jwt.mount_path", &a.jwt.mount_path)?,
            role: required("auth.jwt.role", &a.jwt.role)?,
            jwt_file: absolute_path("auth.jwt.jwt_file", &a.jwt.jwt_file, env)?,
        },
        AuthMethodName::Cert => AuthSettings::Cert {
            mount_path: mount_path("auth.cert.mount_path", &a.cert.mount_path)?,
            name: optional(&a.cert.name).map(str::to_owned),
            cert_file: absolute_path("auth.cert.cert_file", &a.cert.cert_file, env)?,
            key: client_key(&a.cert, env)?,
        },
        AuthMethodName::Token => AuthSettings::Token {
            token_file: absolute_path("auth.token.token_file", &a.token.token_file, env)?,
        },
    })
}

fn client_key(c: &RawCertAuth, env: &Environment) -> Result<ClientKey> {
    let pkcs11_fields = [
        ("auth.cert.module_path", &c.module_path),
        ("auth.cert.token_label", &c.token_label),
        ("auth.cert.key_label", &c.key_label),
        ("auth.cert.key_object_id", &c.key_object_id),
        ("auth.cert.pin_file", &c.pin_file),
    ];
    if c.key_source == KeySource::File {
        if let Some((field, _)) = pkcs11_fields.iter().find(|(_, v)| optional(v).is_some()) {
            return Err(ConfigError::invalid(
                field,
                "is only used with auth.cert.key_source = \"pkcs11\"",
            ));
        }
        return Ok(ClientKey::File(absolute_path(
            "auth.cert.key_file",
            &c.key_file,
            env,
        )?));
    }
    if optional(&c.key_file).is_some() {
        return Err(ConfigError::invalid(
            "auth.cert.key_file",
            "must be empty with key_source = \"pkcs11\": the key stays on the token",
        ));
    }
    let module_path = Path::new(c.module_path.trim());
    if !module_path.is_absolute() {
        return Err(ConfigError::invalid(
            "auth.cert.module_path",
            format!(
                "{:?} is not an absolute path to a PKCS#11 library such as \"/usr/lib/softhsm/libsofthsm2.so\"",
                c.module_path
            ),
        ));
    }
    let token_label = required("auth.cert.token_label", &c.token_label)?;
    if token_label.len() > 32 {
        return Err(ConfigError::invalid(
            "auth.cert.token_label",
            "is longer than the 32 bytes a PKCS#11 token label holds",
        ));
    }
    let key = match (optional(&c.key_label), optional(&c.key_object_id)) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ConfigError::invalid(
                "auth.cert.key_label",
                "set exactly one of auth.cert.key_label and auth.cert.key_object_id",
            ))
        }
        (Some(_), None) => Pkcs11KeyRef::Label(required("auth.cert.key_label", &c.key_label)?),
        (None, Some(hex)) => Pkcs11KeyRef::Id(hex_bytes("auth.cert.key_object_id", hex)?),
    };
    Ok(ClientKey::Pkcs11(Pkcs11Settings {
        module_path: module_path.to_path_buf(),
        token_label,
        key,
        pin_file: absolute_path("auth.cert.pin_file", &c.pin_file, env)?,
    }))
}

/// CKA_ID as hex ("01", "a1b2", optionally with ':' separators as pkcs11-tool prints them).
fn hex_bytes(field: &'static str, value: &str) -> Result<Vec<u8>> {
    let digits: String = value.chars().filter(|c| *c != ':').collect();
    let bad = || {
        ConfigError::invalid(
            field,
            format!("{value:?} is not an even number of hex digits such as \"01\" or \"a1b2\""),
        )
    };
    if digits.is_empty()
        || digits.len() % 2 != 0
        || digits.len() > 256
        || !digits.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

fn transit(raw: &RawConfig) -> Result<TransitSettings> {
    let t = &raw.transit;
    let s = &t.key_id_scope;
    let key_name = required("transit.key_name", &t.key_name)?;
    if !key_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::invalid(
            "transit.key_name",
            "may only contain letters, digits, '-', '_' and '.'",
        ));
    }
    if is_dot_segment(&key_name) {
        return Err(ConfigError::invalid(
            "transit.key_name",
            format!("{key_name:?} is a path step, not a key name: the request URL would name another path"),
        ));
    }
    let provider_name = required("transit.key_id_scope.provider_name", &s.provider_name)?;
    if provider_name.contains(':') {
        return Err(ConfigError::invalid(
            "transit.key_id_scope.provider_name",
            "must not contain ':' (it is part of the etcd prefix k8s:enc:kms:v2:<name>:)",
        ));
    }
    if !provider_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::invalid(
            "transit.key_id_scope.provider_name",
            "may only contain letters, digits, '-', '_' and '.' and must equal the EncryptionConfiguration name",
        ));
    }
    Ok(TransitSettings {
        mount_path: mount_path("transit.mount_path", &t.mount_path)?,
        key_name,
        key_id_scope: KeyIdScope {
            provider_name,
            cluster_id: required("transit.key_id_scope.cluster_id", &s.cluster_id)?,
            transit_mount_id: required(
                "transit.key_id_scope.transit_mount_id",
                &s.transit_mount_id,
            )?,
            key_lineage_id: required("transit.key_id_scope.key_lineage_id", &s.key_lineage_id)?,
        },
    })
}

fn status(raw: &RawConfig) -> Result<StatusSettings> {
    let s = &raw.status;
    let probe_interval = duration(
        "status.probe_interval",
        &s.probe_interval,
        ms(200),
        secs(3600),
    )?;
    let deep_probe_interval = duration(
        "status.deep_probe_interval",
        &s.deep_probe_interval,
        ms(200),
        secs(86400),
    )?;
    let max_staleness = duration(
        "status.max_staleness",
        &s.max_staleness,
        ms(500),
        secs(86400),
    )?;
    if deep_probe_interval < probe_interval {
        return Err(ConfigError::invalid(
            "status.deep_probe_interval",
            "must not be shorter than status.probe_interval",
        ));
    }
    if max_staleness <= probe_interval {
        return Err(ConfigError::invalid(
            "status.max_staleness",
            "must be longer than status.probe_interval, or every snapshot would be stale",
        ));
    }
    Ok(StatusSettings {
        probe_interval,
        deep_probe_interval,
        max_staleness,
        unhealthy_after: NonZeroU32::new(s.unhealthy_after)
            .filter(|n| n.get() <= 100)
            .ok_or_else(|| ConfigError::invalid("status.unhealthy_after", "must be 1 to 100"))?,
    })
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn optional(value: &str) -> Option<&str> {
    let v = value.trim();
    (!v.is_empty()).then_some(v)
}

fn required(field: &'static str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ConfigError::invalid(
            field,
            "is required and must not be empty",
        ));
    }
    if v.len() > 256 || v.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            field,
            "must be at most 256 printable characters",
        ));
    }
    Ok(v.to_owned())
}

fn duration(field: &'static str, value: &str, min: Duration, max: Duration) -> Result<Duration> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        ConfigError::invalid(
            field,
            format!("{value:?} is not a duration with a unit such as \"2s\" or \"5m\": {e}"),
        )
    })?;
    if d < min || d > max {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{value:?} is out of range ({} to {})",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// `%d/NAME` means NAME in systemd's `$CREDENTIALS_DIRECTORY`, like the `%d` unit specifier.
fn absolute_path(field: &'static str, value: &str, env: &Environment) -> Result<PathBuf> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ConfigError::invalid(field, "is required: an absolute path"));
    }
    if let Some(name) = v.strip_prefix("%d/") {
        let dir = env.credentials_directory.as_ref().ok_or_else(|| {
            ConfigError::invalid(field, format!("{v:?} uses %d/ but $CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit)"))
        })?;
        if name.is_empty() || name.contains('/') {
            return Err(ConfigError::invalid(
                field,
                format!("{v:?}: %d/ must be followed by a credential name"),
            ));
        }
        return Ok(dir.join(name));
    }
    let p = Path::new(v);
    if !p.is_absolute() {
        return Err(ConfigError::invalid(
            field,
            format!("{v:?} is not an absolute path"),
        ));
    }
    Ok(p.to_path_buf())
}

fn socket_mode(value: &str) -> Result<u32> {
    let field = "server.socket_mode";
    let v = value.trim();
    let mode = u32::from_str_radix(v.strip_prefix("0o").unwrap_or(v), 8).map_err(|_| {
        ConfigError::invalid(
            field,
            format!("{value:?} is not an octal mode such as \"0600\""),
        )
    })?;
    if mode > 0o777 {
        return Err(ConfigError::invalid(
            field,
            format!("{value:?} is larger than 0777"),
        ));
    }
    if mode & 0o007 != 0 {
        return Err(ConfigError::invalid(
            field,
            format!("{value:?} gives other users access to the KMS socket"),
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(ConfigError::invalid(
            field,
            format!("{value:?} must give the owner read and write (0600)"),
        ));
    }
    Ok(mode)
}

fn mount_path(field: &'static str, value: &str) -> Result<String> {
    let v = required(field, value)?;
    let v = v.trim_matches('/').to_owned();
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        || v.contains("//")
        || v.split('/').any(is_dot_segment)
    {
        return Err(ConfigError::invalid(
            field,
            format!("{value:?} is not a mount path such as \"transit\""),
        ));
    }
    Ok(v)
}

/// `.` and `..` are removed or followed when the request URL is built, so a name or mount
/// made of them would address another path than the one configured.
fn is_dot_segment(segment: &str) -> bool {
    matches!(segment, "." | "..")
}

fn listen_address(field: &'static str, value: &str) -> Result<Option<SocketAddr>> {
    optional(value)
        .map(|v| {
            v.parse::<SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    field,
                    format!("{v:?} is not an address such as \"127.0.0.1:8081\" (empty disables)"),
                )
            })
        })
        .transpose()
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
