//! Validated, typed settings. Built only by `validate`, so holding one means the config was checked.
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use super::raw::{LogFormat, LogLevel};

#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) server: ServerSettings,
    pub(crate) openbao: OpenBaoSettings,
    pub(crate) auth: AuthSettings,
    /// `auth.expiry_warning`: how long before the JWT or client certificate ends to warn.
    pub(crate) auth_expiry_warning: Duration,
    pub(crate) transit: TransitSettings,
    pub(crate) status: StatusSettings,
    pub(crate) rotation: RotationSettings,
    pub(crate) log: LogSettings,
    pub(crate) telemetry: TelemetrySettings,
}

#[derive(Debug, Clone)]
pub(crate) struct ServerSettings {
    pub(crate) socket_path: PathBuf,
    pub(crate) socket_mode: u32,
    pub(crate) state_dir: PathBuf,
    pub(crate) drain_timeout: Duration,
    /// How long systemd is asked to wait for OpenBao at start before the start job fails (so
    /// units ordered after this one, like kubelet, are not held back indefinitely).
    pub(crate) start_timeout: Duration,
    /// Budget of one KMS call end to end (login, retries and failover included).
    pub(crate) kms_timeout: Duration,
    pub(crate) max_concurrent_streams: u32,
    pub(crate) idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct OpenBaoSettings {
    /// The first node; what logs and the doctor name.
    pub(crate) address: reqwest::Url,
    /// Every node of the cluster, in the configured order (one for a single server).
    pub(crate) nodes: Vec<OpenBaoNode>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) tls_server_name: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) instance_id: String,
    pub(crate) max_connections: usize,
    pub(crate) retry_budget: RetryBudgetSettings,
}

/// How many retries the client may send beside first attempts (`openbao.retry_budget_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryBudgetSettings {
    /// Retries per 100 first attempts.
    pub(crate) percent: u32,
    /// Retries per second allowed whatever the traffic.
    pub(crate) min_per_second: u32,
}

/// One OpenBao node: its URL and the name its certificate is checked against (`None`: the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenBaoNode {
    pub(crate) url: reqwest::Url,
    pub(crate) tls_server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthSettings {
    Jwt {
        mount_path: String,
        role: String,
        jwt_file: PathBuf,
    },
    Cert {
        mount_path: String,
        name: Option<String>,
        cert_file: PathBuf,
        key: ClientKey,
    },
    Token {
        token_file: PathBuf,
    },
}

impl AuthSettings {
    pub(crate) fn method_name(&self) -> &'static str {
        match self {
            Self::Jwt { .. } => "jwt",
            Self::Cert { .. } => "cert",
            Self::Token { .. } => "token",
        }
    }
}

/// Where the cert-auth client key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientKey {
    File(PathBuf),
    Pkcs11(Pkcs11Settings),
}

/// A non-extractable key on a PKCS#11 token; the PIN is read from `pin_file` at (re)load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pkcs11Settings {
    pub(crate) module_path: PathBuf,
    pub(crate) token_label: String,
    pub(crate) key: Pkcs11KeyRef,
    pub(crate) pin_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pkcs11KeyRef {
    Label(String),
    /// CKA_ID bytes.
    Id(Vec<u8>),
}

#[derive(Debug, Clone)]
pub(crate) struct TransitSettings {
    pub(crate) mount_path: String,
    pub(crate) key_name: String,
    pub(crate) key_id_scope: KeyIdScope,
}

/// Identity-bearing names hashed into every key_id; changing one changes every key_id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyIdScope {
    pub(crate) provider_name: String,
    pub(crate) cluster_id: String,
    pub(crate) transit_mount_id: String,
    pub(crate) key_lineage_id: String,
}

#[derive(Debug, Clone)]
pub(crate) struct StatusSettings {
    pub(crate) probe_interval: Duration,
    pub(crate) deep_probe_interval: Duration,
    pub(crate) max_staleness: Duration,
    pub(crate) unhealthy_after: NonZeroU32,
}

#[derive(Debug, Clone)]
pub(crate) struct RotationSettings {
    pub(crate) stable_observations: NonZeroU32,
    pub(crate) activation_delay: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct LogSettings {
    pub(crate) level: LogLevel,
    pub(crate) format: LogFormat,
}

#[derive(Debug, Clone)]
pub(crate) struct TelemetrySettings {
    pub(crate) metrics_address: Option<SocketAddr>,
    pub(crate) health_address: Option<SocketAddr>,
    pub(crate) max_connections: usize,
}
